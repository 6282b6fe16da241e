"""Test-set metrics, their pictures and paired comparisons."""
