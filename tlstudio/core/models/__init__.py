"""timm backbones, weight sources, layer groups and freezing, strategy advice."""
