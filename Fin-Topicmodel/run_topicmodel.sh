#!/bin/sh
# Fin-TopicModel: BERTopic over encoder embeddings of financial titles (UMAP -> HDBSCAN ->
# c-TF-IDF over jieba words -> outlier reduction), with metrics, pictures and a saved model.
#
#   sh Fin-Topicmodel/run_topicmodel.sh configs/topics/tiny.yaml --output_dir runs/topics
#   sh Fin-Topicmodel/run_topicmodel.sh configs/topics/base.yaml \
#       --train_data my_titles.csv --output_dir runs/topics
#   sh Fin-Topicmodel/run_topicmodel.sh configs/topics/tiny.yaml --embedding_backend tfidf \
#       --output_dir runs/topics_lsa          # the TF-IDF/LSA baseline
#
# Any --key value after the config overrides that key (see `finbert2 topics --help`).
# New titles against a saved model: python -m finbert2.topics transform --model_dir RUN/model \
#   --input_data new.jsonl --output_file new_topics.csv
set -e
PYTHON=${PYTHON:-python}
CONFIG=${1:?usage: sh run_topicmodel.sh CONFIG.yaml [--key value ...]}
shift

exec "$PYTHON" -m finbert2.topics "$CONFIG" "$@"
