"""nesylib: helpers for the NesyCD / SKIntern reproduction notebooks."""
__version__ = "0.1.0"
