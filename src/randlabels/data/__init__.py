"""Datasets: one module per source, all writing the one file format of :mod:`.h5file`.

- :mod:`.h5file`: the prepared HDF5 file (layout, writing, reading and checking);
- :mod:`.sources`: the table of sources a config's ``source:`` names;
- :mod:`.digits`, :mod:`.gaussian`: data that ship with the project;
- :mod:`.torchvision_datasets`: torchvision's datasets by class name;
- :mod:`.folder`, :mod:`.arrays`: your own images (a class-per-folder tree, a .npz/HDF5);
- :mod:`.imagenet`: Downsampled ImageNet from the user's files.
"""
