"""A training loop for tf.distribute strategies where Keras' Model.fit fails.

Keras 3.15's Model.fit reduces its first (x, y) batch with Strategy.reduce before training, and
MultiWorkerMirroredStrategy rejects that nested value with a ValueError. This loop trains the
same epochs with Strategy.run. Each replica scales the loss of its share of the global batch by
1 / global batch size, and the Keras optimizer sums the gradients over all replicas. The loss and
accuracy sums of all replicas are added for the logs, and the Keras callbacks receive them under
the names Model.fit uses (loss, accuracy, val_loss, val_accuracy).
"""

import keras
import tensorflow as tf

from ferplus.targets import majority_accuracy


def fit_with_strategy(
    model: keras.Model,
    loss_function,
    strategy: tf.distribute.Strategy,
    train_batches: tf.data.Dataset,
    validation_batches: tf.data.Dataset,
    epochs: int,
    first_epoch: int,
    steps_per_epoch: int,
    global_batch_size: int,
    callbacks: list[keras.callbacks.Callback],
    verbose: bool,
) -> None:
    """Train `model` (compiled, built under `strategy`) for epochs first_epoch to epochs - 1.

    `train_batches` must yield the batches of all those epochs one after the other, each
    (pixels, labels) of global_batch_size images; `loss_function` returns one loss per image.
    """
    callback_list = keras.callbacks.CallbackList(callbacks, model=model)
    train_iterator = iter(strategy.experimental_distribute_dataset(train_batches))
    distributed_validation = strategy.experimental_distribute_dataset(validation_batches)
    optimizer = model.optimizer

    def totals(labels, probabilities, losses):
        # Sums, so that replicas with fewer images (or none) weigh correctly when added up.
        return tf.stack(
            [
                tf.reduce_sum(losses),
                tf.reduce_sum(majority_accuracy(labels, probabilities)),
                tf.cast(tf.shape(losses)[0], tf.float32),
            ]
        )

    def replica_train_step(pixels, labels):
        with tf.GradientTape() as tape:
            probabilities = model(pixels, training=True)
            losses = loss_function(labels, probabilities)
            loss = tf.reduce_sum(losses) / global_batch_size
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                loss = optimizer.scale_loss(loss)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return totals(labels, probabilities, losses)

    def replica_test_step(pixels, labels):
        probabilities = model(pixels, training=False)
        return totals(labels, probabilities, loss_function(labels, probabilities))

    @tf.function
    def train_step(iterator):
        per_replica = strategy.run(replica_train_step, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    @tf.function
    def test_step(batch):
        per_replica = strategy.run(replica_test_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    callback_list.on_train_begin()
    for epoch in range(first_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        progress = keras.utils.Progbar(steps_per_epoch) if verbose else None
        train_sums = tf.zeros([3])
        for step in range(steps_per_epoch):
            train_sums += train_step(train_iterator)
            if progress is not None:
                progress.update(step + 1)
        validation_sums = tf.zeros([3])
        for batch in distributed_validation:
            validation_sums += test_step(batch)
        train_loss, train_correct, train_count = train_sums.numpy().tolist()
        validation_loss, validation_correct, validation_count = validation_sums.numpy().tolist()
        logs = {
            "loss": train_loss / train_count,
            "accuracy": train_correct / train_count,
            "val_loss": validation_loss / validation_count,
            "val_accuracy": validation_correct / validation_count,
        }
        callback_list.on_epoch_end(epoch, logs)
    callback_list.on_train_end()
