"""The Streamlit dashboard (``kdh dashboard``): reads MLflow, writes nothing.

``data`` reads the store (cached), ``tables`` and ``charts`` are pure transforms, ``views`` draws
the five views, ``app`` is the entry point that Streamlit runs.
"""
