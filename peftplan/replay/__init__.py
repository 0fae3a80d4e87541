"""The replay machinery methods describe themselves with, below the methods and the planner.

`terms.py`: what a method changes in a training step (`MemoryTerms`, `LinearAdapter`, `AdapterKind`);
`symbolic.py`: tensor sizes as polynomials in batch and sequence, and the saved/live bookkeeping;
`ops.py`: replayed torch ops (what each allocates and what autograd saves). Nothing here names a method.
"""
