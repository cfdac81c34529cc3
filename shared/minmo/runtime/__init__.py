"""The one interface services call for model compute: named tensors in, named tensors out.

The same service code runs on the in-process runtime (`local`, PyTorch in this process) or on
Triton (`triton`), chosen by configuration; see DESIGN.md §5.
"""
