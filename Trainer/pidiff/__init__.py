"""pidiff: the Python half of pidiff-data.

Modules, one per stage (import them directly; this package imports nothing heavy):
    shards        read the WebDataset shards pidiff-data exports
    e4e           Encoder4Editing, loads the official e4e_ffhq_encode.pt
    encode        shards -> encoded safetensors (e4e w+, SD VAE latent mean/std, identity, role, labels)
    random_model  random-weight SD1.5 and e4e stand-ins for runs without downloaded weights
    model         the PIDiff model (mapper + style cross-attention) and its weights file
    schedule      SD1.5's DDPM/DDIM noise schedule, for training and sampling
    data          the encoded folder (samples per identity, the reference face) and prompts
    train, runs   the trainer's core; run folders, group sizes, checkpoints, --resume, ranks
    sample, style the sampler; style mixing and sample outputs
    wplus         `pidiff wplus`: a face's w+ from any photo (via `pidiff-data face`) or a prepared e4e input
    evaluate      `pidiff eval`
    cli           the `pidiff` command
"""

__version__ = "0.1.0"
