"""The method's network and the settings it was trained with.

- config.py: the training config in five groups, the presets;
- network.py: ROIModel, a classifier with the mask network that explains it and the fill of removed pixels;
- backbones.py: any torchvision classifier by name, with local weights;
- mask_nets.py: the mask networks, behind one constructor signature;
- masks.py: maps to binary masks (top-k), random maps;
- exported.py: the exported folder (safetensors, config.json, the model card), written and read;
- trained.py: the one way a trained model comes back from a checkpoint or an exported folder.
"""
