"""Benchmarks of trvae (Kang, Kang counts, MNIST, speed, scale) and the baselines they compare.

This package imports :mod:`trvae`; the library never imports it. Its commands join the
``trvae`` command line through the ``trvae.cli`` entry point
(:func:`trvae_benchmarks.cli.register`).
"""
