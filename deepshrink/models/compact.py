"""compact models registered into the zoo (see zoo.MODELS)."""
