"""A custom meshserve model type: multiplies its input by a factor read from the model's files."""
