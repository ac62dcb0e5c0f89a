"""Kiln training: model zoo, data, and the classifier / translator training CLIs."""
