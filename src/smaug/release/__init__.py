"""Release: provenance (what a model folder came from), the licence it inherits, its model card, publishing."""
