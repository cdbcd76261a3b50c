"""Class-incremental learning: classes arrive in tasks; after each task the model is
evaluated on every class seen so far, without task identity at test time."""
