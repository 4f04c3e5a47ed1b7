from .clip_vit import ConvStem, D2OpenCLIPViT, D2OpenCLIPViTPyramid

__all__ = ["ConvStem", "D2OpenCLIPViT", "D2OpenCLIPViTPyramid"]
