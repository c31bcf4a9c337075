"""Modified backward rules (guided, deconvnet, LRP, DeepLIFT, excitation) and the composites that choose them."""
