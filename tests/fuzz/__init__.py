"""Fuzzing ``scanside enhance`` with mutated real DICOM files: ``python -m tests.fuzz``."""
