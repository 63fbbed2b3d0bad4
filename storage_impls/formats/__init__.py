"""File-format helpers that several methods share (``.npy`` files, Arrow binary columns)."""
