"""Graph rewriting: expose tensors, make the batch dynamic, append gradient subgraphs."""
