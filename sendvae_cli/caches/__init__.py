"""Row caches: one HDF5 row per image, written in resumable blocks by any number of processes.

`h5rows` is the block machinery, `encode_rows` the shared run of a model over an image source,
`extract` / `features` the teacher-token cache and its reader, `latents` / `latent_dataset` the
VAE latent cache and the dataset a generator trains on.
"""
