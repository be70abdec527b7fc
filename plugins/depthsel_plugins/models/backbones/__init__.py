"""Classification backbones with torchvision parameter names, for the depth model plugins."""
