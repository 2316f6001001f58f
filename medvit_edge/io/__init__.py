"""Reading inputs: images (PNG/JPEG/TIFF...), DICOM, folders and file lists, labelled sets and
run folders. One reader serves training, export, evaluation and inference."""
