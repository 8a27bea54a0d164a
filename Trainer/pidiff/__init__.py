"""pidiff: the Python half of pidiff-data.

Modules, one per stage (import them directly; this package imports nothing heavy):
    shards        read the WebDataset shards pidiff-data exports
    e4e           Encoder4Editing, loads the official e4e_ffhq_encode.pt
    encode        shards -> encoded safetensors (e4e w+, SD VAE latent mean/std)
    random_model  random-weight SD1.5 and e4e stand-ins for runs without downloaded weights
    model, train, sample   the PIDiff model, trainer and sampler
    cli           the `pidiff` command
"""

__version__ = "0.1.0"
