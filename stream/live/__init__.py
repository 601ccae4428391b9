"""The live worker: the Faust app, its batch driver, catalogue sync, loaded services and the one module that reaches Faust/aiokafka internals."""
