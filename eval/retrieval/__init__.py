"""`hf-hyper retrieval`: needle-in-a-haystack retrieval, unpatched vs patched layers."""
