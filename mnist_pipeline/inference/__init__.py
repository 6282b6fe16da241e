"""A trained model on new pictures: predict-sample, `mnist-predict` and `mnist-serve`."""
