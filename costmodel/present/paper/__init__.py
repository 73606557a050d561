"""The paper's generated content: LaTeX printed from the model's expressions and results.

:mod:`costmodel.present.paper.latex` prints expressions and numbers,
:mod:`costmodel.present.paper.model` the sections that come from the model itself,
:mod:`costmodel.present.paper.results` the sections that come from the experiments' recorded
results, :mod:`costmodel.present.paper.figures` the figures.  Nothing here prints or writes files
except the figure functions, which write the path they are given; ``python -m experiments.paper``
writes and checks ``paper/generated/``.
"""
