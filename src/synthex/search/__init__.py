"""Search chest X-rays by text or by a similar image, and search their reports.

- :mod:`synthex.search.model`: the dual encoder (image tower + text tower, one space);
- :mod:`synthex.search.train`: ``synthex train search`` (a client of the common loop);
- :mod:`synthex.search.index`: embed a folder once, update it incrementally;
- :mod:`synthex.search.query`: text / image / report queries, tables, CSV/JSON, contact sheets;
- :mod:`synthex.search.evaluate`: Recall@k, Precision@k, NDCG, MAP, MRR against baselines;
- :mod:`synthex.search.labels`: what makes a result relevant (finding labels with sides).
"""
