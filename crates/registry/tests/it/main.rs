mod febrl;
