"""Reruns of the experiments of the HierTCN paper (You et al., WWW 2019) on a given data set:
model comparison (cold and warm start), epoch times, loss comparison, regularization comparison,
and the three MRP analyses."""
