"""The course's applications, built on the teaching modules: the command line (cli), the headless
notebook runner, reports, Colab, data and result checks, benchmarks, the Jupyter kernel, the lock
and torch index, and the Hub stand-ins for tests. Nothing in the teaching modules imports from here.
"""
