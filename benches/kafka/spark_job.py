"""Spark Structured Streaming, the same query as run.py's other engines:
Kafka → SQL → Parquet, `local[2]`, the same trigger interval (1 s).

  spark_job.py BROKERS TOPIC OUT_DIR earliest|latest TOTAL JARS_DIR

With `earliest` it stops once TOTAL input rows were processed; with
`latest` it runs until SIGTERM.
"""
import glob
import os
import signal
import sys
import time

from pyspark.sql import SparkSession

brokers, topic, out, start, total, jars = sys.argv[1:7]
KEEP = ("spark-sql-kafka", "spark-token-provider-kafka", "kafka-clients", "commons-pool2")
total = int(total)
spark = (SparkSession.builder.master("local[2]").appName("kafka-bench")
         # the connector and what pyspark lacks; pyspark has its own Scala, lz4, snappy
         .config("spark.jars", ",".join(j for j in glob.glob(os.path.join(jars, "*.jar"))
                                        if os.path.basename(j).startswith(KEEP)))
         .config("spark.sql.shuffle.partitions", "2")
         .config("spark.ui.enabled", "false")
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
raw = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", brokers)
       .option("subscribe", topic).option("startingOffsets", start)
       .option("maxOffsetsPerTrigger", 500000).load())
raw.createOrReplaceTempView("raw")
q = spark.sql("""
  SELECT o.id, o.user_id, o.amount * 1.1 AS amount_eur, o.country, timestamp AS ts
  FROM (SELECT from_json(CAST(value AS STRING),
               'id BIGINT, user_id STRING, amount DOUBLE, country STRING') AS o, timestamp FROM raw)
  WHERE o.amount > 10
""")
query = (q.writeStream.format("parquet").option("path", out)
         .option("checkpointLocation", out + "-checkpoint")
         .trigger(processingTime="1 second").start())
stopping = False
signal.signal(signal.SIGTERM, lambda *_: globals().__setitem__("stopping", True))
rows_by_batch = {}
while not stopping:
    time.sleep(0.5)
    for p in query.recentProgress:
        rows_by_batch[p["batchId"]] = p["numInputRows"]
    if start == "earliest" and sum(rows_by_batch.values()) >= total:
        break
query.stop()
spark.stop()
