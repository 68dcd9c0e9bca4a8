mod chinese;
mod febrl;
