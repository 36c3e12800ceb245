"""Weightless model folders of the families beyond Qwen (a model config, the stock transformers processor, a
tiny word-level tokenizer), written as ``save_pretrained`` writes them: the engines' scenarios build their own
processors from these."""

from __future__ import annotations


def _toy_tokenizer(special, words, extra=None, newlines=False):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = ["<unk>", "<bos>", "<eos>", "<pad>", *special, *words, "\n", "\n\n", "\n\n\n", "\n\n\n\n"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(vocab))}, unk_token="<unk>"))
    # Digits one by one (GLM's timestamps); with ``newlines`` (Gemma 3's prompt is built with them, and vLLM's
    # Gemma 3 path merges them) newline runs are tokens of their own and only spaces split words.
    split = ([pre_tokenizers.Split(Regex("\n+"), "isolated"), pre_tokenizers.Split(" ", "removed")] if newlines
             else [pre_tokenizers.WhitespaceSplit()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([*split, pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.Split(".", "isolated")])
    named = {"extra_special_tokens": extra} if extra else {}  # an empty one would drop the special tokens
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", additional_special_tokens=list(special), **named)


_INTERNVL_CHAT_CONFIG = '''"""A weightless stand-in for the configuration code InternVL's original checkpoints ship."""
from transformers import PretrainedConfig, Qwen2Config


class InternVisionConfig(PretrainedConfig):
    model_type = "intern_vit_6b"

    def __init__(self, image_size=448, patch_size=14, **kwargs):
        self.image_size, self.patch_size = image_size, patch_size
        super().__init__(**kwargs)


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"
    sub_configs = {"vision_config": InternVisionConfig, "llm_config": Qwen2Config}

    def __init__(self, vision_config=None, llm_config=None, downsample_ratio=0.5, force_image_size=448,
                 min_dynamic_patch=1, max_dynamic_patch=12, dynamic_image_size=True, use_thumbnail=True, **kwargs):
        self.vision_config = vision_config if isinstance(vision_config, InternVisionConfig) else InternVisionConfig(
            **(vision_config or {}))
        self.llm_config = llm_config if isinstance(llm_config, Qwen2Config) else Qwen2Config(**(llm_config or {}))
        self.downsample_ratio, self.force_image_size = downsample_ratio, force_image_size
        self.min_dynamic_patch, self.max_dynamic_patch = min_dynamic_patch, max_dynamic_patch
        self.dynamic_image_size, self.use_thumbnail = dynamic_image_size, use_thumbnail
        super().__init__(**kwargs)

    def get_text_config(self, *args, **kwargs):
        return self.llm_config
'''


def internvl_chat_folder(folder):
    """A weightless InternVL original checkpoint (``internvl_chat``): config.json with its configuration code
    (loaded with trust_remote_code, as the published ones are), a tiny tokenizer; no processor config."""
    import json
    import pathlib

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration_internvl_chat.py").write_text(_INTERNVL_CHAT_CONFIG)
    special = ["<img>", "</img>", "<IMG_CONTEXT>", "<|video_pad|>", "<image>", "<video>"]
    tok = _toy_tokenizer(special, [*"0123456789", ".", "describe", *(f"Frame{i}:" for i in range(1, 40))])
    tok.save_pretrained(folder)
    config = {"model_type": "internvl_chat", "architectures": ["InternVLChatModel"],
              "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig"},
              "vision_config": {"image_size": 448, "patch_size": 14},
              "llm_config": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": len(tok),
                             "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                             "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 65536},
              "downsample_ratio": 0.5, "force_image_size": 448, "min_dynamic_patch": 1, "max_dynamic_patch": 6,
              "dynamic_image_size": True, "use_thumbnail": True, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def family_folder(model_type, folder):
    """A weightless GLM-4.1V, InternVL (-hf, or the original ``internvl_chat``) or Gemma 3 model (config, the stock
    processor, a tiny tokenizer)."""
    if model_type == "internvl_chat":
        return internvl_chat_folder(folder)
    import pathlib

    import transformers

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digits = [*"0123456789", ".", "seconds", "describe", "Frame1:", "Frame2:", "Frame3:", "Frame4:"]
    if model_type == "glm4v":
        special = ["<|image|>", "<|video|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                   "<|end_of_video|>"]
        tok = _toy_tokenizer(special, digits)
        ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
            ("image_token_id", "<|image|>"), ("video_token_id", "<|video|>"),
            ("image_start_token_id", "<|begin_of_image|>"), ("image_end_token_id", "<|end_of_image|>"),
            ("video_start_token_id", "<|begin_of_video|>"), ("video_end_token_id", "<|end_of_video|>"))}
        cfg = transformers.Glm4vConfig(**ids)
        cfg.architectures = ["Glm4vForConditionalGeneration"]
        proc = transformers.Glm4vProcessor(image_processor=transformers.Glm4vImageProcessor(), tokenizer=tok,
                                           video_processor=transformers.Glm4vVideoProcessor())
    elif model_type == "internvl":
        special = ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
        tok = _toy_tokenizer(special, digits, {"start_image_token": "<img>", "end_image_token": "</img>",
                                               "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
        cfg = transformers.InternVLConfig(image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
        cfg.architectures = ["InternVLForConditionalGeneration"]
        imagenet = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
        proc = transformers.InternVLProcessor(
            image_processor=transformers.GotOcr2ImageProcessor(size={"height": 448, "width": 448},
                                                               crop_to_patches=True, **imagenet),
            video_processor=transformers.InternVLVideoProcessor(size={"height": 448, "width": 448}, **imagenet),
            tokenizer=tok)
    else:
        special = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
        tok = _toy_tokenizer(special, digits, {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                               "image_token": "<image_soft_token>"}, newlines=True)
        cfg = transformers.Gemma3Config(boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                                        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
                                        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"))
        cfg.architectures = ["Gemma3ForConditionalGeneration"]
        proc = transformers.Gemma3Processor(
            image_processor=transformers.Gemma3ImageProcessor(size={"height": 896, "width": 896},
                                                              image_mean=[0.5] * 3, image_std=[0.5] * 3),
            tokenizer=tok)
    cfg.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


OMNI_SPECIAL = {
    # image, audio, video, vision start / end, audio start / end: each family's published tokenizer's names.
    "qwen2_5_omni": ["<|IMAGE|>", "<|AUDIO|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>", "<|audio_bos|>",
                     "<|audio_eos|>"],
    "qwen3_omni_moe": ["<|image_pad|>", "<|audio_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
                       "<|audio_start|>", "<|audio_end|>"],
}


def omni_folder(model_type, folder):
    """A weightless Qwen2.5-Omni or Qwen3-Omni model: its config (a one-layer thinker), the stock processor (the
    Qwen2-VL image and video processors, Whisper's feature extractor with the Omni settings) and a tiny tokenizer
    with the family's special token names."""
    import pathlib

    import transformers

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = ("image", "audio", "video", "vision_bos", "vision_eos", "audio_bos", "audio_eos")
    special = OMNI_SPECIAL[model_type]
    tok = _toy_tokenizer(special, ["describe", "listen"],
                         {f"{n}_token": t for n, t in zip(names, special, strict=True)})
    ids = dict(zip(names, (tok.convert_tokens_to_ids(t) for t in special), strict=True))
    text = {"vocab_size": len(tok), "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "intermediate_size": 64}
    patch = 14
    if model_type == "qwen2_5_omni":
        cfg = transformers.Qwen2_5OmniConfig(thinker_config={
            "image_token_index": ids["image"], "audio_token_index": ids["audio"],
            "video_token_index": ids["video"], "vision_start_token_id": ids["vision_bos"],
            "vision_end_token_id": ids["vision_eos"], "audio_start_token_id": ids["audio_bos"],
            "audio_end_token_id": ids["audio_eos"], "text_config": text})
        cfg.architectures = ["Qwen2_5OmniModel"]
        processor_cls = transformers.Qwen2_5OmniProcessor
    else:
        patch = 16
        cfg = transformers.Qwen3OmniMoeConfig(thinker_config={
            "audio_token_id": ids["audio"], "image_token_id": ids["image"], "video_token_id": ids["video"],
            "audio_start_token_id": ids["audio_bos"], "vision_start_token_id": ids["vision_bos"],
            # Not fields of transformers' thinker config; the published config.json has them and SGLang reads them.
            "vision_end_token_id": ids["vision_eos"], "audio_end_token_id": ids["audio_eos"],
            "text_config": {**text, "moe_intermediate_size": 32, "num_experts": 2, "num_experts_per_tok": 1}})
        cfg.architectures = ["Qwen3OmniMoeForConditionalGeneration"]
        processor_cls = transformers.Qwen3OmniMoeProcessor
    cfg.save_pretrained(folder)
    processor_cls(image_processor=transformers.Qwen2VLImageProcessor(patch_size=patch),
                  video_processor=transformers.Qwen2VLVideoProcessor(patch_size=patch),
                  feature_extractor=transformers.WhisperFeatureExtractor(feature_size=128, chunk_length=300),
                  tokenizer=tok).save_pretrained(folder)
    return folder
