"""What the experts specialise in: the expert map (`emo-slice map`) and calibration stability.

The design follows AllenAI's EMO clustering pipeline (extract -> transform -> cluster -> visualize), with
per-token router logits as the one primitive everything else is derived from:

  capture.py     documents (with their domain) -> router logits per token, streamed to a `.npy` memory map
  represent.py   logits -> probabilities, top-k indicators, document means, the domain x expert usage map
  cluster.py     mean-centre + PCA to a variance share + L2 + k-means (scikit-learn), seeded
  measures.py    what says whether experts are modular: cluster purity and source entropy, document spread,
                 typical tokens, expert specialisation
  plots.py       PNGs (usage map with one shared colour scale, document-spread histogram), matplotlib
  explorer.py    the self-contained HTML explorer (explorer.html: plain JavaScript and SVG, data inlined)
  stability.py   how the kept set changes with the number of calibration examples, and across seeds

scikit-learn and matplotlib are optional extras (`pip install emo-slice[map]`); nothing here is imported
by `emo-slice --help`. Shape letters: the legend in `emo_slice/__init__.py` (here N = tokens, R = routed
experts of a layer, C = columns: every layer's R side by side).
"""
