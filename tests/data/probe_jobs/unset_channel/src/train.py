import os

print("hosts:", os.environ["SM_HOSTS"], flush=True)
data = os.environ["SM_CHANNEL_TRAINING"]  # the channel is called "train": SM_CHANNEL_TRAIN
print(sorted(os.listdir(data)))
