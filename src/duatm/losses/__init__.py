"""DuATM's training objective (Sec. 3.3): each term usable alone, combined in DuATMLoss."""

from duatm.losses.combined import DuATMLoss, LossOutput
from duatm.losses.decorrelation import decorrelation_loss
from duatm.losses.random_pooling import RandomPoolingCrossEntropy, random_pooling_weights
from duatm.losses.triplet import TripletMining, batch_hard_triplet, mine_batch_hard

__all__ = [
    "DuATMLoss",
    "LossOutput",
    "RandomPoolingCrossEntropy",
    "TripletMining",
    "batch_hard_triplet",
    "decorrelation_loss",
    "mine_batch_hard",
    "random_pooling_weights",
]
