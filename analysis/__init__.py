"""Analysis of trained runs: the flatness measures of the Focal-SAM paper's figures.

Pure numerical parts (torch / numpy only, nothing from engine/), each usable on its own:
  params.py      flat vectors, seeded Rademacher / Gaussian vectors, temporary weight shifts
  hvp.py         a loss over fixed batches: value, gradient, Hessian-vector products
  eigen.py       power iteration, Lanczos with full reorthogonalisation
  trace.py       Hutchinson's trace estimator with its standard error
  density.py     stochastic Lanczos quadrature and Gaussian broadening
  directions.py  filter-normalised random directions (Li et al. 2018)
  landscape.py   loss along one or two directions
  sharpness.py   class-wise sharpness L_k(w + eps) - L_k(w)
  groups.py      head / medium / tail / class lists, seeded training subsets
The rest ties them to a run: run.py loads one (config, data, weights, loss), measure.py runs the
analyses on it, plots.py draws, commands.py is analyze.py's command line.
"""
