"""NS-Net / Advanced NS-Net: generalisable detection of AI-generated images over cached CLIP
features. Data flows one way: images -> manifest -> patches/captions -> embeddings -> heads ->
metrics."""

__version__ = "0.1.0"
