"""Knowledge: what the teachers write for the students, stored and retrieved.

- ``text``: the two-section knowledge text (render, parse, check, canonicalise), its one owner.
- ``kb``: NesyCD's knowledge base of the tutor's error analyses.
- ``writer``: SKIntern's knowledge generation (learning summary and supplementary knowledge per item).
- ``retrieval``: BM25 and dense (MiniLM + faiss) retrieval over texts.
- ``porter``: the Porter stemmer that BM25's analyser uses.
"""
