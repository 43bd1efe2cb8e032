"""Ground level shared by every layer: the registry type, the user-error type, collectives.

Nothing here imports the rest of the project, so `optim`, `losses`, `models` and `data` can use
it and still be libraries: importing them never loads the engine.
"""
