"""Tasks -> examples -> token batches. The only package that imports TensorFlow or seqio."""
