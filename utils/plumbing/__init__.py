"""Base helpers the teaching modules stand on: files and folders, Hub access, measurement, results, run state.

Nothing here knows about models or training methods; nothing here imports from the rest of `utils`.
"""
