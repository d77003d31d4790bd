"""Finding images on disk: scanning folders, CSVs and archives, safe decoding, splits."""
