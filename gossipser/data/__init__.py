"""data: audio on the device becomes model inputs. Corpus loaders (RAVDESS, CREMA-D, TESS,
Emo-DB, IEMOCAP, generic), the synthetic corpus, MFCC features with a cache, the dataset arrays,
and the partition of speakers into peers. Imports nothing else of gossipser but `errors`/`config`.
"""
