-- The Nanhai tax bureau's legacy core tax system (CTAIS, MariaDB): the taxpayer registration
-- table as such systems have it — short pinyin column names, codes instead of words, DATETIME
-- in local time. exhub reads its binlog and never writes to it.
CREATE TABLE IF NOT EXISTS nsr_djxx (
  nsrsbh  CHAR(18)      NOT NULL COMMENT '纳税人识别号 (统一社会信用代码)',
  nsrmc   VARCHAR(200)  NOT NULL COMMENT '纳税人名称',
  fddbr   VARCHAR(50)   NULL     COMMENT '法定代表人',
  djrq    DATE          NOT NULL COMMENT '登记日期',
  djzclx  CHAR(3)       NOT NULL COMMENT '登记注册类型代码',
  nsrzt   CHAR(2)       NOT NULL COMMENT '纳税人状态代码',
  ssqx    VARCHAR(50)   NOT NULL COMMENT '所属区县',
  scjydz  VARCHAR(300)  NULL     COMMENT '生产经营地址',
  zczb    DECIMAL(18,2) NULL     COMMENT '注册资本 (元)',
  hydm    VARCHAR(5)    NULL     COMMENT '国民经济行业代码',
  zgswjg  VARCHAR(100)  NULL     COMMENT '主管税务机关',
  lxdh    VARCHAR(20)   NULL     COMMENT '联系电话',
  xgsj    DATETIME      NULL     COMMENT '修改时间',
  PRIMARY KEY (nsrsbh)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COMMENT = '纳税人登记信息';
