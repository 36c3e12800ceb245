"""Stand-in for transformers' ``utils/fetch_hub_objects_for_ci.py``, which its test mixins import at module level
but which its source distribution does not ship. Upstream maps a Hub URL to a file fetched ahead of CI; the
tests here have no network, so every URL maps to a path that does not exist: a mixin test that loads Hub
media fails at once (with the stock classes too, so the comparison skips it), and nothing is downloaded."""

import posixpath


def url_to_local_path(url: str, *args: object, **kwargs: object) -> str:
    return posixpath.join("/nonexistent-hub-fixture", posixpath.basename(url))
