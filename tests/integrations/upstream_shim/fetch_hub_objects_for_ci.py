"""Stand-in for transformers' ``utils/fetch_hub_objects_for_ci.py``, which its test mixins import at module level
but which its source distribution does not ship. Only tests that load images from the Hub call it, and none
of gpu-mm's do: the tests have no network."""


def url_to_local_path(url: str, *args: object, **kwargs: object) -> str:
    raise RuntimeError(f"no network in gpu-mm's tests: {url} is not available")
