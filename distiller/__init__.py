"""The embedded DDK distiller (divergences, domain weights, sampler, training loop).

It arrives with the distiller issue; the package exists now so that the layout is the design's.
"""
