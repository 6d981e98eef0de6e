"""Object storage operations for the tests, through boto3 against an S3-compatible endpoint.

usage: s3.py ENDPOINT mkbucket BUCKET | list BUCKET | get BUCKET KEY | put BUCKET KEY (stdin) | delete BUCKET KEY
"""
import sys

import boto3


def main() -> None:
    endpoint, op, bucket, *rest = sys.argv[1:]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    if op == "mkbucket":
        s3.create_bucket(Bucket=bucket)
    elif op == "list":
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            print(item["Key"])
    elif op == "get":
        sys.stdout.buffer.write(s3.get_object(Bucket=bucket, Key=rest[0])["Body"].read())
    elif op == "put":
        s3.put_object(Bucket=bucket, Key=rest[0], Body=sys.stdin.buffer.read())
    elif op == "delete":
        s3.delete_object(Bucket=bucket, Key=rest[0])
    else:
        sys.exit(f"unknown operation {op}")


if __name__ == "__main__":
    main()
