"""Data: from a dataset on disk to batches.

- nih.py: download, unify and make-csv for NIH ChestX-ray14;  phantom.py: a synthetic stand-in in its layout;
- sources/: make-csv for the other datasets (CheXpert, PadChest, VinDr-CXR, RSNA, SIIM, NIH's Google relabels);
- kaggle.py: downloads through kagglehub;
- labels.py: finding names, and a training CSV's findings;  vocabulary.py: names across datasets;
- boxes.py: ground-truth boxes;
- images.py: decoding an image, and reading the decoded-image cache;  cache.py: building that cache;
- dicom.py: DICOM films through pydicom (display transform, header checks, the phantom's writer);
- preflight.py: every image checked before a run;  augment.py: augmentation;
- dataset.py: `image,labels` CSVs as a torch Dataset, and the sampler that makes resume exact.
"""
