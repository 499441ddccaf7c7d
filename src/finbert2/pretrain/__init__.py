"""Pretraining stages: masked-LM with Chinese whole-word masking (``mlm``) and RetroMAE (``retromae``)."""
