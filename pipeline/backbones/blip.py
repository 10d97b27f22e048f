"""BLIP captioners: the real Hugging Face model and a tiny random one for tests and the demo.

``load_blip(model)`` is the one place a captioner is built. ``model="tiny"`` builds a 2-layer
BLIP from an explicit ``BlipConfig`` with a fixed seed and a small offline WordPiece vocabulary
(written to a temporary file), so its captions are deterministic strings of words. Real models
load with ``trust_remote_code`` off and prefer safetensors.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsnet.backbones.availability import (
    BLIP_FOLDER_HELP,
    BLIP_HELP,
    ModelUnavailable,
    ensure_offline_if_unreachable,
    first_line,
)
from nsnet.backbones.clip import resolve_device
from nsnet.backbones.precision import autocast

TINY_MODEL = "tiny"
TINY_SEED = 0
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
_WORDS = (
    "a an the of in on with and at by near under over two three some small large old young "
    "photo picture image view close up blurry dark bright colorful white black red green blue "
    "yellow brown gray orange man woman child person people dog cat horse bird car chair table "
    "tree trees grass sky cloud clouds water sea river road street building house room window "
    "door wall floor field mountain beach city food plate cup coffee flower flowers rock rocket "
    "space star stars moon face hand hat shirt standing sitting walking lying flying looking "
    "holding wearing next to front back top side is are it its there this that"
).split()


@dataclass
class Captioner:
    model: Any
    processor: Any
    device: torch.device
    # what identifies the loaded model beyond its setting (caption.model): the weights'
    # revision or seed, the transformers release
    provenance: dict[str, Any] = field(default_factory=dict)

    @torch.inference_mode()
    def caption(self, images: list[np.ndarray], max_new_tokens: int,
                amp_dtype: torch.dtype | None = None) -> list[str]:
        """Greedy (deterministic) captions for a batch of (H, W, 3) uint8 images."""
        inputs = self.processor(images=list(images), return_tensors="pt")
        return self.generate(inputs["pixel_values"], max_new_tokens, amp_dtype)

    @torch.inference_mode()
    def generate(self, pixels: torch.Tensor, max_new_tokens: int,
                 amp_dtype: torch.dtype | None = None) -> list[str]:
        """Greedy captions of a batch of BLIP ``pixel_values`` (whitespace normalised)."""
        pixels = pixels.to(self.device, non_blocking=True)
        with autocast(self.device, amp_dtype):
            out = self.model.generate(pixel_values=pixels, max_new_tokens=max_new_tokens,
                                      num_beams=1, do_sample=False)
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    @property
    def resizer(self) -> BlipResize:
        """BLIP's image processor split into a worker-side resize and a device-side
        normalisation (``BlipResize``)."""
        return BlipResize(self.processor.image_processor)


class BlipResize:
    """BLIP's own image processor split in two: the resize (in a decoding worker, kept as
    uint8, a quarter of the bytes of float32) and the rescale + normalisation (main process, on
    the model's device where the processor supports it). Bit-identical to calling the processor
    on the decoded image, whichever backend the installed transformers uses."""

    def __init__(self, image_processor: Any) -> None:
        self.processor = image_processor

    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (3, S, S) resized, uint8 when the values are whole numbers."""
        x = self.processor(images=[rgb], do_rescale=False, do_normalize=False,
                           return_tensors="pt")["pixel_values"][0]
        if x.dtype != torch.uint8 and bool((x == x.round()).all()) and x.min() >= 0 \
                and x.max() <= 255:
            x = x.to(torch.uint8)
        return x.numpy()

    def normalise(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(B, 3, S, S) resized batch -> ``pixel_values`` float32 on ``device``."""
        batch = batch.to(device, non_blocking=True)
        try:
            out = self.processor(images=batch, do_resize=False, return_tensors="pt",
                                 device=device)["pixel_values"]
        except (TypeError, ValueError):  # processors without a device option
            out = self.processor(images=batch.cpu(), do_resize=False,
                                 return_tensors="pt")["pixel_values"]
        return out.to(device, non_blocking=True)


def _tiny() -> tuple[Any, Any]:
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    vocab = _SPECIALS + _WORDS
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, bos_token="[DEC]")
    dec = vocab.index("[DEC]")
    sep = vocab.index("[SEP]")
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab), "hidden_size": 64, "encoder_hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
            "max_position_embeddings": 64, "bos_token_id": dec, "sep_token_id": sep,
            "eos_token_id": sep, "pad_token_id": 0, "initializer_range": 1.0,
        },
        vision_config={
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 64, "patch_size": 16,
            "initializer_range": 1.0,
        },
        # A wide init makes the random captioner's words depend visibly on the image.
        projection_dim=64, image_text_hidden_size=64, initializer_range=1.0,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(TINY_SEED)
    try:
        model = BlipForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(state)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer
    )
    return model, processor


def _real(name: str) -> tuple[Any, Any, dict[str, Any]]:
    from transformers import BlipForConditionalGeneration, BlipProcessor

    local = Path(name).is_dir()
    online = True if local else ensure_offline_if_unreachable()
    try:
        model = BlipForConditionalGeneration.from_pretrained(
            name, local_files_only=local or not online, trust_remote_code=False
        )
        processor = BlipProcessor.from_pretrained(name, local_files_only=local or not online)
    except Exception as exc:  # noqa: BLE001 - re-raised with instructions
        if local:
            raise ModelUnavailable(BLIP_FOLDER_HELP.format(path=name, cause=first_line(exc))
                                   ) from exc
        why = "" if online else " (the Hugging Face hub is not reachable from here)"
        raise ModelUnavailable(BLIP_HELP.format(model=name, why=why) + f"\nCause: {exc}") from exc
    revision = getattr(model.config, "_commit_hash", None) or ("local" if local else "unknown")
    return model, processor, {"blip_revision": revision}


@functools.lru_cache(maxsize=2)
def load_blip(name: str, device: str = "auto") -> Captioner:
    """Build (once per process) a BLIP captioner in eval mode.

    Args:
        name: a Hugging Face model id (``Salesforce/blip-image-captioning-base``, the
            reference), a local folder saved with ``save_pretrained``, or ``tiny`` (a small
            random BLIP for tests and demos). Only safetensors weights are loaded; no remote code.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns a ``Captioner`` (model, processor, device, provenance).

    Raises:
        ModelUnavailable: the model is not in the local cache and the hub cannot be reached;
            the message names the command that fetches it.

    Example::

        blip = load_blip("Salesforce/blip-image-captioning-base", device="cuda")
        caption = blip.caption([rgb_uint8], max_new_tokens=40)[0]
    """
    import transformers

    dev = resolve_device(device)
    if name == TINY_MODEL:
        model, processor = _tiny()
        extra = {"blip_weights": f"random-init(seed={TINY_SEED})"}
    else:
        model, processor, extra = _real(name)
    model.to(dev).eval().requires_grad_(False)
    provenance = {**extra, "transformers": transformers.__version__}  # beyond caption.model
    return Captioner(model=model, processor=processor, device=dev, provenance=provenance)


# The code that defines the cached captions (``nsnet.provenance.code_fingerprint``).
CAPTION_CODE = (BlipResize, Captioner.generate, load_blip, _tiny, _real, _SPECIALS, _WORDS)
